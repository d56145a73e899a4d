# One image for all six services (and the provisioning job); the command picks the service:
#   docker run ... python -m booking
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never

RUN pip install --no-cache-dir uv==0.13.8

WORKDIR /app
COPY pyproject.toml uv.lock ./
COPY shared ./shared
COPY services ./services
RUN uv sync --frozen --no-dev --no-cache

ENV PATH=/app/.venv/bin:$PATH

RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app
USER app

CMD ["python", "-m", "booking"]
