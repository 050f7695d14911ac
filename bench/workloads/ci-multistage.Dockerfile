# The CI benchmark's multi-stage Dockerfile (`--workload multistage`): the build step runs in
# a stage of its own, and the image is the dependency stage plus the build's output, so a
# runner that takes the dependency step from the cache needs its layer only to push it.
ARG BASE
FROM ${BASE} AS build
WORKDIR /app
COPY src/ ./src/
RUN mkdir -p dist && tar -cf - src | gzip -1 > dist/app.tar.gz \
    && sha256sum dist/app.tar.gz > dist/SHA256SUMS

FROM ${BASE}
WORKDIR /app
COPY requirements.txt ./
RUN mkdir -p /opt/deps && while read -r name mib; do \
        head -c $((mib * 1048576)) /dev/urandom > "/opt/deps/$name"; \
    done < requirements.txt
COPY --from=build /app/dist/ ./dist/
CMD ["cat", "/app/dist/SHA256SUMS"]
