"""The in-container agent: runs inside the builder image, standard library only.

It mounts the session's overlay, starts the tracer, chroots into the rootfs to
run the session, then computes the closure of what was used and writes the
image's entries as a tar stream for the host (see nbic.tarstream).
"""
