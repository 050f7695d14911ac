BEGIN TRANSACTION;
CREATE TABLE file_hashes (
    path TEXT PRIMARY KEY,
    stat TEXT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO "file_hashes" VALUES('/src/ctx/a.txt','6:1796631717097461707:1796631717097461707:15363425:65024:33188','95921157d5aed760d0020112009e83a2');
INSERT INTO "file_hashes" VALUES('/src/ctx/big.bin','20000000:1796631717158843880:1796631717158843880:15363426:65024:33188','bda5a0368b1876a9ac84cb95e27afb46');
CREATE TABLE steps (
    key TEXT PRIMARY KEY,
    parent TEXT NOT NULL,
    instruction TEXT NOT NULL,
    inputs TEXT NOT NULL,
    layer TEXT NOT NULL,
    created REAL NOT NULL DEFAULT (julianday('now'))
);
INSERT INTO "steps" VALUES('2aa19f2c3a5d286c82342d3e55d00dfa03e831040240d11f5d5e9599234805b9','facts:base:sha256:ebca07bbd5378085fff32899f765b3d3d063da6795bca5548a01b5c488c633d1','facts','{"dest": "/a.txt", "ins": "{\"chmod\": \"\", \"chown\": \"\", \"dest\": \"/a.txt\", \"exclude\": [], \"files\": [], \"from\": \"\", \"instruction\": \"COPY\", \"link\": false, \"parents\": false, \"sources\": [\"a.txt\"]}", "kinds": 2, "link": false}','{"diff_id": "", "digest": "", "facts": {"dest": "/a.txt", "dir": false, "file": false, "owner": null}, "media_type": "", "size": 0}',2.46138184899028949429e+06);
INSERT INTO "steps" VALUES('2c0246eac2db9ab5bfdb72d770698651b3834ac275512f8fd20f14c894f34d41','base:sha256:ebca07bbd5378085fff32899f765b3d3d063da6795bca5548a01b5c488c633d1','{"chmod": "", "chown": "", "dest": "/a.txt", "exclude": [], "files": [], "from": "", "instruction": "COPY", "link": false, "parents": false, "sources": ["a.txt"]}','{"chmod": null, "chown": [], "compression": "gzip", "dest": "/a.txt", "files": {"a.txt": "95921157d5aed760d0020112009e83a2"}, "sde": null}','{"created": "2026-12-07T08:22:32.615392Z", "diff_id": "sha256:ae1416de3d4f27b631ca09979f5bbbb07930af03525cc204a3b69a9e905d0b94", "digest": "sha256:e66d50f52737a56249b90e632d235cd4dfd19e013014db7d35b34e59c432bff0", "media_type": "application/vnd.oci.image.layer.v1.tar+gzip", "size": 110}',2.46138184899050928657e+06);
INSERT INTO "steps" VALUES('2b9a1b79583ccadc8c4485c47d88b89cf20b9c805791088531e8593fe06643e2','2c0246eac2db9ab5bfdb72d770698651b3834ac275512f8fd20f14c894f34d41','{"command": ["echo built > /b.txt && rm -f /bin/true"], "files": [], "instruction": "RUN", "mount_specs": [], "mounts": [], "network": null, "security": null, "shell_form": true}','{"argv": ["/bin/sh", "-c", "echo built > /b.txt && rm -f /bin/true"], "compression": "gzip", "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "network": "default", "sde": null, "user": "", "workdir": "/"}','{"created": "2026-12-07T08:22:32.615392Z", "diff_id": "sha256:c2f2ab90716d16f528608a235e6e5317fc542c0f2be8c5227d4c94135f6d340c", "digest": "sha256:4603b86b545eb398e1c9b5b712cbb80e31b897f11bb7be5dcad850eb6a66457f", "media_type": "application/vnd.oci.image.layer.v1.tar+gzip", "size": 166}',2.4613818489923495799e+06);
INSERT INTO "steps" VALUES('9c377cd700fc264d904775892196ba88823488d84143cdcfb1282862ddb59c96','facts:2b9a1b79583ccadc8c4485c47d88b89cf20b9c805791088531e8593fe06643e2','facts','{"dest": "/big.bin", "ins": "{\"chmod\": \"\", \"chown\": \"\", \"dest\": \"/big.bin\", \"exclude\": [], \"files\": [], \"from\": \"\", \"instruction\": \"COPY\", \"link\": false, \"parents\": false, \"sources\": [\"big.bin\"]}", "kinds": 2, "link": false}','{"diff_id": "", "digest": "", "facts": {"dest": "/big.bin", "dir": false, "file": false, "owner": null}, "media_type": "", "size": 0}',2.46138184899239568039e+06);
INSERT INTO "steps" VALUES('f6df7070821ba23dd8ce9c538a65cc8e7482ca555ae6189f885a485a6ef95e3c','2b9a1b79583ccadc8c4485c47d88b89cf20b9c805791088531e8593fe06643e2','{"chmod": "", "chown": "", "dest": "/big.bin", "exclude": [], "files": [], "from": "", "instruction": "COPY", "link": false, "parents": false, "sources": ["big.bin"]}','{"chmod": null, "chown": [], "compression": "gzip", "dest": "/big.bin", "files": {"big.bin": "bda5a0368b1876a9ac84cb95e27afb46"}, "sde": null}','{"created": "2026-12-07T08:22:32.615392Z", "diff_id": "sha256:5cef8309ef9c70af6e2d95f30954c02961057b11a33e1cbfb1081cf1c129dcc8", "digest": "sha256:0ce0d4ab482c4755c8a9b341adb8e8cc46aa5e8cdf8160ec8e047b558f732ae8", "media_type": "application/vnd.oci.image.layer.v1.tar+gzip", "size": 20009388}',2.46138184899530094106e+06);
CREATE INDEX steps_parent ON steps(parent, instruction);
COMMIT;
