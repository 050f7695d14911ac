"""pybuild's image builder: Dockerfile -> instructions -> execution -> changesets -> image."""
