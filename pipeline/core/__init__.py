"""Small infrastructure every other package may use, and that uses none of them: user errors reported in one
line (:mod:`~pipeline.core.errors`), atomic files and locks (:mod:`~pipeline.core.files`), secrets kept out of
every output (:mod:`~pipeline.core.redact`), the stages' timing line (:mod:`~pipeline.core.timing`), the import
closure behind ``dvc.yaml``'s code deps (:mod:`~pipeline.core.closure`), and work in a forked child
(:mod:`~pipeline.core.forking`)."""
