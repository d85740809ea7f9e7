"""Serving: hand artifacts to the inference servers users already run.

* :mod:`.package` writes a model repository for Triton Inference Server, OpenVINO Model Server
  (OVMS) or KServe from one artifact (``dyt-edge package``): :mod:`.triton`, :mod:`.ovms`,
  :mod:`.kserve`; what is served (tensor names, types, dims, batch limits) is derived once, in
  :mod:`.spec`, from the artifact's manifest.
* :mod:`.triton_python` is the Triton Python-backend model a ``--backend python`` repository
  runs: the artifact through dyt-edge's own runtime, so OpenVINO keeps its explicit precision
  and every target keeps its dispatch masks.
* :mod:`.tritonserver` finds the Triton server the ``serve`` extra installs and prepares it;
  :mod:`.server` runs it on a repository (``dyt-edge serve``), waits until it is ready and
  stops it, and every process it started, on request.

The facts these modules rely on (versions checked, what each server accepts) are in
``docs/serving.md``.
"""
