# recxfer on CPU: the `recxfer` command (serve, nightly, recommend, ...) in one image.
#   docker build -t recxfer:0.1.0 .
#   docker run --rm -p 50051:50051 -p 9100:9100 -v /srv/artifacts:/artifacts:ro recxfer:0.1.0
#   docker run --rm -v /srv/artifacts:/artifacts -v /data/recxfer:/data:ro recxfer:0.1.0 \
#       nightly --data /data --artifacts /artifacts
# Checked without Docker by tests/test_deploy.py (the CMD parses as a `recxfer` command line).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
# The same pin as pyproject.toml and the Makefile; from the CPU wheel index, because
# PyPI's Linux wheel pulls several GB of CUDA packages.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --index-url ${TORCH_INDEX_URL} torch==${TORCH_VERSION}
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY protos/ protos/
COPY recxfer/ recxfer/
# Building the wheel runs setup.py's build hook, which generates the gRPC stubs from
# protos/ (grpcio-tools is a build requirement); torch is already satisfied.
RUN pip install ".[cpu]" && python -c "import recxfer.v1.recommender_pb2_grpc, faiss, torch"

FROM ${PYTHON_IMAGE}
# libgomp1: OpenMP runtime of faiss and torch on a slim base.
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    OMP_WAIT_POLICY=PASSIVE
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin recxfer
USER 10001
WORKDIR /home/recxfer
# 50051: gRPC (Recommender, grpc.health.v1.Health, reflection); 9100: Prometheus /metrics
EXPOSE 50051 9100
ENTRYPOINT ["recxfer"]
CMD ["serve", "--artifacts", "/artifacts", "--address", "0.0.0.0:50051", "--metrics-address", "0.0.0.0:9100", "--log-format", "json"]
