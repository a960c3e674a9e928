"""The mesh_change suite against the backend of the run (``--ckpt-backend``)."""

from ckptconf.conformance.suites.mesh_change import MeshChangeTests


class TestMeshChange(MeshChangeTests):
    pass
