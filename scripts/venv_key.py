"""Print the key of the virtual environment for this checkout's dependency list.

With --requirements, print the requirement lines instead (runtime and test dependencies).
"""

import hashlib
import sys
import tomllib
from pathlib import Path


def requirements() -> list[str]:
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["test"]]


def main() -> None:
    reqs = requirements()
    if "--requirements" in sys.argv:
        print("\n".join(reqs))
        return
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    digest = hashlib.sha256("\n".join([version, *reqs]).encode()).hexdigest()[:16]
    print(f"py{version}-{digest}")


if __name__ == "__main__":
    main()
