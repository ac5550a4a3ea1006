# Component image for the ITEm pipelines on a Kubeflow cluster / Vertex AI Pipelines.
# Every task runs in it with no runtime `pip install`: the pinned set of requirements.lock, hash-checked
# (requirements.container.lock; CPU PyTorch from the PyTorch CPU index, requirements.torch-cpu.lock; for
# GPU nodes build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 and
# --build-arg TORCH_LOCK=<a lock with that wheel's hash>) and the project itself.
# The base image is pinned by digest (python:3.11-slim, linux/amd64 + arm64 index); to move it:
#   docker buildx imagetools inspect python:3.11-slim   (then replace the digest below)
#   docker build -t REGION-docker.pkg.dev/PROJECT/item/item-mlops:0.1.0 .
#   docker push  REGION-docker.pkg.dev/PROJECT/item/item-mlops:0.1.0
# then set `image:` in pipelines/configs/cluster.yaml (docs/deploy.md).
FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_LOCK=requirements.torch-cpu.lock
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DO_NOT_TRACK=1 \
    BENTOML_DO_NOT_TRACK=true \
    GX_ANALYTICS_ENABLED=false \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false

WORKDIR /opt/item-mlops

# dependencies first (cached layer): exactly the pinned set, every file checked against its SHA-256
COPY requirements.container.lock ${TORCH_LOCK} ./
RUN python -m pip install "pip==26.3" \
 && python -m pip install --require-hashes --no-deps --index-url "${TORCH_INDEX}" -r "$(basename ${TORCH_LOCK})" \
 && python -m pip install --require-hashes --no-deps -r requirements.container.lock \
 && python -m pip check

# the project, without touching the pinned dependencies
COPY pyproject.toml README.md ./
COPY item_model ./item_model
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
COPY monitoring ./monitoring
RUN python -m pip install --no-deps . \
 && python -c "import item_model, components.pretrain, pipelines.training, kfp.kubernetes, google.cloud.storage"

# tasks and the service run as an unprivileged user (the container binds 0.0.0.0 when serving)
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin item
USER 10001:10001
ENV HOME=/home/item BENTOML_HOME=/home/item/bentoml

# KFP lightweight components run `python3 -m kfp.dsl.executor_main ...` in this image
CMD ["python3"]
