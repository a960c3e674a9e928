"""The mesh-change suite against the backend chosen by --ckpt-backend."""

from ckptconf.conformance.suites.mesh_change import MeshChangeTests


class TestMeshChange(MeshChangeTests):
    pass
