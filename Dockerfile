# kvroute EPP image: `docker build -t kvroute/epp:0.1.0 .`
# (Not built in CI: no Docker daemon runs on our machines. See docs/kubernetes.md.)
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/kvroute \
 && /opt/kvroute/bin/pip install --upgrade pip \
 && /opt/kvroute/bin/pip install .

FROM python:3.11-slim
RUN groupadd --system --gid 10001 kvroute \
 && useradd --system --uid 10001 --gid kvroute --no-create-home --home-dir /tmp \
      --shell /usr/sbin/nologin kvroute
COPY --from=build /opt/kvroute /opt/kvroute
ENV PATH=/opt/kvroute/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
# Numeric user so `runAsNonRoot` can verify it without resolving names.
USER 10001:10001
# 9002 ext_proc (gRPC), 9003 gRPC health, 9090 Prometheus /metrics
EXPOSE 9002 9003 9090
ENTRYPOINT ["kvroute", "epp"]
