"""``sagawire bench``: place_order sagas in closed loop against a stack, per mode, with the floors.

:mod:`bench.command` is the command; :mod:`bench.drivers` what each mode places and how;
:mod:`bench.closed_loop` the loop and its measures; :mod:`bench.stack_under_test` the stack
it runs against; :mod:`bench.consistency` the check of the services' records after a mode;
:mod:`bench.long_runs` the soak and the recovery; :mod:`bench.report` the output.
"""
