"""One module per instruction family: ``metadata`` (config-only instructions), ``run``
(RUN in the sandbox), ``copy`` (COPY, ADD, WORKDIR's directory); ``common`` holds what
they share (the step environment, turning an upper dir into a cached layer)."""
