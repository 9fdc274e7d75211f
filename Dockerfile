# The image deploy/kubernetes/daemonset.yaml names (fileserver:0.1.0), built as a host is set up:
# Debian 12 and the repository's own `make setup`, here without the test and benchmark tools
# (FILESERVER_SETUP=runtime). At run time the node's /lib/modules and /usr/src are mounted for
# bcc's headers, and the node's network is the pod's (hostNetwork).
#   docker build -t fileserver:0.1.0 .
FROM debian:12.8-slim

ENV DEBIAN_FRONTEND=noninteractive \
    FILESERVER_SETUP=runtime \
    FILESERVER_CACHE_DIR=/var/cache/fileserver

RUN apt-get update \
    && apt-get install -y --no-install-recommends make python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/fileserver
COPY . .
RUN make setup \
    && ln -s /opt/fileserver/.venv/bin/fileserver /usr/local/bin/fileserver \
    && rm -rf /var/lib/apt/lists/* /root/.cache

EXPOSE 8080 9180
# Kubernetes uses the DaemonSet's probes; this is for `docker run`.
HEALTHCHECK --interval=10s --timeout=3s CMD ["curl", "-fsS", "http://127.0.0.1:9180/live"]
ENTRYPOINT ["fileserver"]
