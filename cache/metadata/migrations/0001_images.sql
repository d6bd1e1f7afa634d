-- One row per stored original. id is compared bytewise (COLLATE "C"), as SQLite does,
-- so keyset pagination orders ids the same on every engine and every server locale.
CREATE TABLE images (
    id text COLLATE "C" PRIMARY KEY,
    original_filename text NOT NULL,
    media_type text NOT NULL,
    format text NOT NULL,
    width integer NOT NULL,
    height integer NOT NULL,
    frames integer NOT NULL,
    byte_size bigint NOT NULL,
    sha256 text NOT NULL,
    created_ns bigint NOT NULL,
    owner text NOT NULL,
    visibility integer NOT NULL
);

-- ListImages: WHERE owner = $1 AND (created_ns, id) < ($2, $3) is an index condition here,
-- so a page costs the same however deep it is.
CREATE INDEX images_by_owner ON images (owner, created_ns DESC, id DESC);
