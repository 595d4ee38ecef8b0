"""Template folders (pki/, configs/, systemd/) shipped inside the package.

In a source checkout they live at the repository's top level; setup.py maps them here
for installed copies. Use :func:`securekv.resources.template_dir` to find them.
"""
