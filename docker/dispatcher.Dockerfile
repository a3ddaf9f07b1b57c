# The joulebench dispatcher for `docker compose up`: host-side code only (docker SDK, pydantic,
# click, rich, analysis and report libraries); engines run in their own images.
# Not an engine image (it lives outside docker/<engine>/), so `joulebench images build` skips it.
ARG BASE_IMAGE=python:3.12-slim-bookworm
FROM ${BASE_IMAGE}
USER root
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY docker/common/ /opt/jb-build/
COPY docker/certs/ /opt/jb-build/certs/
COPY docker/wheels/ /opt/jb-build/wheels/
COPY pyproject.toml README.md /opt/joulebench-src/
COPY src/ /opt/joulebench-src/src/
COPY docker/ /opt/joulebench-src/docker/
RUN python3 -m venv /opt/joulebench && JB_PYTHON=/opt/joulebench/bin/python sh /opt/jb-build/pip-install.sh /opt/joulebench-src \
    && rm -rf /opt/jb-build
ENV PATH=/opt/joulebench/bin:$PATH JOULEBENCH_PROJECT_ROOT=/opt/joulebench-src
# Runs as root: access to the engine socket is root-equivalent on the host anyway (see docs/containers.md).
ENTRYPOINT ["joulebench"]
CMD ["run"]
