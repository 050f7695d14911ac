# The builder benchmark's Dockerfile: BASE is a busybox image in a loopback registry.
ARG BASE
FROM ${BASE}
COPY files/ /data/
RUN cat /data/* | wc -c > /size
RUN echo second > /second
CMD ["cat", "/size"]
