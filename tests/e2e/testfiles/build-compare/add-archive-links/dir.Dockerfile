ARG BASE
FROM ${BASE}
RUN mkdir -p /dst/sub && echo "old a" > /dst/a
ADD dir.tar /dst/
