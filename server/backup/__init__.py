"""``cancer-alpha backup``: the coordinator's registry, audit log, model bundles and
checkpoints in one verified archive (see :mod:`server.backup.coordinator`)."""
