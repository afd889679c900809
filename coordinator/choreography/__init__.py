"""Following choreographed sagas: what each service event says, recorded in the saga log."""
