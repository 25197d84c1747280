"""m2mesh services of the Acme P1 3D printer (an example vendor package).

The handlers live in `acme_printer.handlers`; the package's ``m2mesh.services`` entry
points name them, so an agent finds them once the package is installed.
"""
