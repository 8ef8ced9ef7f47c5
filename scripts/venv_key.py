"""Print the key of the virtual environment for this checkout's dependency list.

With --requirements, print the requirement lines instead (runtime and test dependencies).
With --client-sdks, print "name requirement" lines for the client SDKs the end-to-end tests run,
each installed into its own folder because several of them install the same package name.
"""

import hashlib
import sys
import tomllib
from pathlib import Path


def _pyproject() -> dict:
    return tomllib.loads(Path("pyproject.toml").read_text())


def requirements() -> list[str]:
    project = _pyproject()["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["test"]]


def client_sdks() -> dict[str, str]:
    return dict(_pyproject().get("tool", {}).get("easel", {}).get("client-sdks", {}))


def main() -> None:
    reqs = requirements()
    sdks = client_sdks()
    if "--requirements" in sys.argv:
        print("\n".join(reqs))
        return
    if "--client-sdks" in sys.argv:
        print("\n".join(f"{name} {spec}" for name, spec in sdks.items()))
        return
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    lines = [version, *reqs, *(f"sdk:{name}={spec}" for name, spec in sdks.items())]
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
    print(f"py{version}-{digest}")


if __name__ == "__main__":
    main()
