# The worker image: `workers worker` (one process, workers.count threads) is its command;
# the same image serves the dashboard with `workers web --host 0.0.0.0`.
# Build: docker build -t workers .   Your jobs: FROM this image, COPY your package into
# /app and set WORKERS_JOBS (see docs/deploying.md).

FROM python:3.11-slim AS build
WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY workers ./workers
# every wheel the project and its web extra need, built here, where compilers may be
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[web]"

FROM python:3.11-slim
COPY --from=build /wheels /wheels
# from the wheels alone: the final stage fetches nothing and compiles nothing
RUN pip install --no-cache-dir --no-index --find-links=/wheels /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --create-home --uid 10001 --user-group workers
USER 10001:10001
WORKDIR /app
# the example jobs (WORKERS_JOBS=app_jobs): the current folder is importable
COPY app_jobs ./app_jobs
# production: a container that misses its MongoDB URL stops, instead of running on an
# embedded server of its own that no other container sees
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    WORKERS_MONGO__EMBEDDED=never
# the database answers and this container's worker process beats within a lease
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["workers", "health"]
# TERM: the graceful shutdown (workers.shutdown); give it grace + mongo.timeout + a margin
STOPSIGNAL SIGTERM
CMD ["workers", "worker"]
