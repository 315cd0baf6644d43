# Switchboard: slim image, non-root, `switchboard serve` on the bundled config.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY router ./router
COPY providers ./providers
RUN pip install . \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin switchboard

COPY config.yaml /etc/switchboard/config.yaml
ENV SWITCHBOARD_CONFIG=/etc/switchboard/config.yaml \
    SWITCHBOARD_HOST=0.0.0.0 \
    SWITCHBOARD_PORT=4000

USER switchboard
EXPOSE 4000
# Probes $SWITCHBOARD_PORT, where the bundled config listens; a mounted config should listen there too
# (`port: ${SWITCHBOARD_PORT:-4000}`), or the container is reported unhealthy.
HEALTHCHECK --interval=10s --timeout=2s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % (os.environ.get('SWITCHBOARD_PORT') or '4000'), timeout=2)"]
ENTRYPOINT ["switchboard", "serve"]
