"""The mesh: Syncthing REST client (`syncthing`), provisioning (`provision`), sync bridge."""
