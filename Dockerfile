# One image for every Sagawire process: the four domain services and the coordinator.
#   docker compose up            (see docker-compose.yml)
#   docker run --rm sagawire:dev sagawire --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The source (with the generated protobuf code and services/seed.toml) is installed as a
# package; .dockerignore keeps the virtualenv, stores, caches and tests out of the context.
COPY . /src
RUN pip install /src \
    && rm -rf /src \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin sagawire \
    && mkdir /data \
    && chown sagawire:sagawire /data

USER sagawire
WORKDIR /home/sagawire
# Listen on every interface of the container; keep SQLite files and traces in /data
# (a named volume per process in docker-compose.yml).
ENV SAGAWIRE_HOST=0.0.0.0 \
    SAGAWIRE_DATA_DIR=/data
VOLUME ["/data"]

CMD ["sagawire", "--help"]
