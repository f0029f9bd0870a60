# SyncBridge in a container: one process on :8080, configured only by environment
# variables, each one a setting (`python -m syncbridge --help` lists them; see
# docs/runbook.md). compose.yaml runs it with Redis.
#
#   docker build -t syncbridge .
#   docker run -p 8080:8080 -e JWT_SECRET="$(openssl rand -base64 48)" syncbridge
#
# Without JWT_SECRET it starts in try-out mode (a random secret and demo tokens in
# its log): fine to try, never for real use.
FROM python:3.11-slim

# A fixed, unprivileged uid; its home holds nothing but what Python may cache.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/syncbridge \
        --shell /usr/sbin/nologin syncbridge

COPY pyproject.toml README.md /src/
COPY syncbridge /src/syncbridge
RUN pip install --no-cache-dir /src && rm -rf /src

USER syncbridge
WORKDIR /home/syncbridge

# Every interface, port 8080: what EXPOSE, the HEALTHCHECK and compose.yaml assume.
ENV SERVER_ADDR=:8080
EXPOSE 8080

# /health/live needs no token and answers 200 while the process serves; a liveness
# probe, so a Redis outage (the server keeps serving, degraded) does not restart it.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('SERVER_ADDR', ':8080').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/health/live', timeout=2)"]

# SIGTERM (docker stop) drains: sockets close with 1001 within SHUTDOWN_TIMEOUT.
CMD ["python", "-m", "syncbridge"]
