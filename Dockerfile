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
    && mkdir /data /certs /ca \
    && mkdir -p /out/coordinator /out/order /out/inventory /out/payment /out/shipping /out/operator \
    && chown -R sagawire:sagawire /data /certs /ca /out

USER sagawire
WORKDIR /home/sagawire
# Listen on every interface of the container; keep SQLite files and traces in /data
# (a named volume per process in docker-compose.yml). /certs holds the process's own
# certificate and key, /ca and /out are the certs service's (owned by the user, so the
# named volumes mounted there start writable by it).
ENV SAGAWIRE_HOST=0.0.0.0 \
    SAGAWIRE_DATA_DIR=/data \
    SAGAWIRE_CERTS_DIR=/certs
VOLUME ["/data"]

CMD ["sagawire", "--help"]
