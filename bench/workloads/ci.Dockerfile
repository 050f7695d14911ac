# The CI benchmark's Dockerfile: BASE is a busybox image in a loopback registry.
ARG BASE
FROM ${BASE}
WORKDIR /app
COPY requirements.txt ./
# The dependency install: what pip or apt would download, here fresh random bytes, so a
# step that runs again gives a new layer (the benchmark checks that runner B did not).
RUN mkdir -p /opt/deps && while read -r name mib; do \
        head -c $((mib * 1048576)) /dev/urandom > "/opt/deps/$name"; \
    done < requirements.txt
COPY src/ ./src/
# The build step: package the sources.
RUN mkdir -p dist && tar -cf - src | gzip -1 > dist/app.tar.gz \
    && sha256sum dist/app.tar.gz > dist/SHA256SUMS
CMD ["cat", "/app/dist/SHA256SUMS"]
