# The builder benchmark's second Dockerfile: a build stage over a context of many small
# files (a source tree, node_modules), and a final stage that takes one file of it, as a
# Go or C build ships its binary. BASE is a busybox image in a loopback registry.
ARG BASE
FROM ${BASE} AS build
COPY src/ /src/
RUN find /src -type f | wc -l > /count && cat /src/p0/f0.js /count > /app
FROM ${BASE}
COPY --from=build /app /usr/local/bin/app
COPY --from=build /count /count
CMD ["cat", "/count"]
