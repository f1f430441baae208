# Two entry points (see README): `make run` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS ?= cpu,test
ADDRESS ?= 127.0.0.1:50051

.PHONY: setup run test clean samples

setup: $(STAMP)

# Re-installs when the package definition or the API changes. torch is installed
# first and pinned, so pip never pulls the CUDA build on a CPU machine. The editable
# install runs setup.py's build hook, which generates the gRPC stubs from protos/.
$(STAMP): pyproject.toml setup.py $(wildcard protos/recxfer/v1/*.proto)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet --editable '.[$(EXTRAS)]'
	touch $(STAMP)

run: setup
	$(BIN)/recxfer run --data data_samples --artifacts artifacts --address $(ADDRESS)

test: setup
	$(BIN)/python -m pytest -q

samples: setup
	$(BIN)/recxfer generate-samples --out data_samples

clean:
	rm -rf $(VENV) artifacts build *.egg-info recxfer/v1/*_pb2*.py recxfer/v1/*_pb2*.pyi
