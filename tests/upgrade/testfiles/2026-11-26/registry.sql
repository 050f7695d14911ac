BEGIN TRANSACTION;
CREATE TABLE manifests (
    repo TEXT NOT NULL,
    digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    subject TEXT,
    artifact_type TEXT,
    annotations TEXT,
    created REAL NOT NULL,
    PRIMARY KEY (repo, digest)
);
INSERT INTO "manifests" VALUES('app','sha256:cb156df0f5c2416d37ff9f2264368e7c416454be31ce13dcf47205041012d4e4','application/vnd.oci.image.manifest.v1+json',873,NULL,'application/vnd.oci.image.config.v1+json',NULL,1.79663173044186401361e+09);
INSERT INTO "manifests" VALUES('other','sha256:cb156df0f5c2416d37ff9f2264368e7c416454be31ce13dcf47205041012d4e4','application/vnd.oci.image.manifest.v1+json',873,NULL,'application/vnd.oci.image.config.v1+json',NULL,1.79663173077111363411e+09);
CREATE TABLE repositories (
    name TEXT PRIMARY KEY,
    created REAL NOT NULL
);
INSERT INTO "repositories" VALUES('app',1.79663172998804068561e+09);
INSERT INTO "repositories" VALUES('other',1.79663173076689195633e+09);
CREATE TABLE tags (
    repo TEXT NOT NULL,
    tag TEXT NOT NULL,
    digest TEXT NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (repo, tag)
);
INSERT INTO "tags" VALUES('app','v1','sha256:cb156df0f5c2416d37ff9f2264368e7c416454be31ce13dcf47205041012d4e4',1.79663173018286180492e+09);
INSERT INTO "tags" VALUES('app','v2','sha256:cb156df0f5c2416d37ff9f2264368e7c416454be31ce13dcf47205041012d4e4',1.79663173044186401361e+09);
INSERT INTO "tags" VALUES('other','latest','sha256:cb156df0f5c2416d37ff9f2264368e7c416454be31ce13dcf47205041012d4e4',1.79663173077111363411e+09);
CREATE TABLE uploads (
    id TEXT PRIMARY KEY,
    repo TEXT NOT NULL,
    created REAL NOT NULL
);
INSERT INTO "uploads" VALUES('77e02b75ef21521ff4a99840a75b38fc','app',1.79663173087831354139e+09);
CREATE INDEX manifests_subject ON manifests (repo, subject)
    WHERE subject IS NOT NULL;
CREATE INDEX tags_digest ON tags (repo, digest);
COMMIT;
