"""Pipeline stages. Each stage is a package with its pure rules (``core``) beside its Faust agent."""
