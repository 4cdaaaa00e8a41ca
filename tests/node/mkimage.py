#!/usr/bin/env python3
"""Writes an OCI image layout with one single-layer image per --arch (an index of
them when there are several), for the test node: no container engine needed.

  mkimage.py --out DIR --file SRC:DEST [--file ...] [--link DEST:TARGET]
             [--entrypoint ARG ...] [--env K=V] [--user U:G] [--arch amd64 --arch arm64]

The layout's index.json names the image (or index) with the ref "latest", so
`skopeo copy [--all] oci:DIR docker://...` pushes it.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import tarfile


def blob(out, data):
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(out, "blobs", "sha256", digest)
    with open(path, "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + digest, "size": len(data)}


def layer_tar(files, links):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = set()
        for dest in [d for _, d in files] + [d for d, _ in links]:
            parts = dest.strip("/").split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for src, dest in files:
            src = os.path.realpath(src)  # a symlink on the host is its target in the image
            info = tar.gettarinfo(src, arcname=dest.strip("/"))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            with open(src, "rb") as f:
                tar.addfile(info, f)
        for dest, target in links:
            info = tarfile.TarInfo(dest.strip("/"))
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
            tar.addfile(info)
    return buf.getvalue()


def image(out, arch, layer, diff_id, a):
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {"Env": a.env, "Entrypoint": a.entrypoint or None, "User": a.user or ""},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   **blob(out, json.dumps(config).encode())},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}],
    }
    desc = blob(out, json.dumps(manifest).encode())
    return {"mediaType": manifest["mediaType"], **desc, "platform": {"architecture": arch, "os": "linux"}}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--file", action="append", default=[], metavar="SRC:DEST")
    p.add_argument("--link", action="append", default=[], metavar="DEST:TARGET")
    p.add_argument("--entrypoint", nargs="+", default=[])
    p.add_argument("--env", action="append", default=["PATH=/usr/local/bin:/usr/bin:/bin"])
    p.add_argument("--user")
    p.add_argument("--arch", action="append")
    a = p.parse_args()
    os.makedirs(os.path.join(a.out, "blobs", "sha256"), exist_ok=True)
    raw = layer_tar([f.split(":", 1) for f in a.file], [lk.split(":", 1) for lk in a.link])
    diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    layer = blob(a.out, gzip.compress(raw, mtime=0))
    images = [image(a.out, arch, layer, diff_id, a) for arch in (a.arch or ["amd64"])]
    if len(images) == 1:
        top = images[0]
    else:
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": images}
        top = {"mediaType": index["mediaType"], **blob(a.out, json.dumps(index).encode())}
    top = {k: v for k, v in top.items() if k != "platform"}
    top["annotations"] = {"org.opencontainers.image.ref.name": "latest"}
    with open(os.path.join(a.out, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [top]}, f)
    with open(os.path.join(a.out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)


if __name__ == "__main__":
    main()
