# SDK worker image for Dataflow and portable runners (Flink, Spark): Beam's Python 3.11 SDK harness plus
# docqa, torch and the bundled model. Documented in README ("Dataflow", "Beam on Flink and Spark"); the
# image is not built in CI (no Docker engine there), but tests/test_install.py installs exactly the files
# these COPY lines take, the same way.
#   docker build -t REGION-docker.pkg.dev/PROJECT/docqa/worker:0.1.0 .
#   docker build --build-arg TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" ...
# The base image's SDK is the Beam of requirements-lock.txt (tests/test_install.py checks), so the lock
# installs no other Beam over it.
FROM apache/beam_python3.11_sdk:2.78.0

ARG TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
ENV HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_NO_CACHE_DIR=1

WORKDIR /opt/docqa
RUN pip install ${TORCH_SPEC}
COPY pyproject.toml README.md requirements-lock.txt ./
COPY qa_core ./qa_core
COPY pipelines ./pipelines
COPY docqa ./docqa
# The bundled model is package data of qa_core: it is installed with the package, so workers never
# download weights at run time (`model.name_or_path: bundled` finds it in site-packages).
# Through the lock: the versions CI tested, not whatever is newest on the day the image is built.
RUN pip install -c requirements-lock.txt '.[gcp]'
COPY configs ./configs

# Beam's SDK harness entry point (inherited from the base image).
ENTRYPOINT ["/opt/apache/beam/boot"]
