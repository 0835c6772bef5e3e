"""Test machines for the ssh runtime (containers running sshd): `hstream-conformance hosts`."""
