-- Placeholders of each image (see ImageMetadata.blurhash and .thumbhash), made at upload.
-- Images stored before have none: the defaults say so. A constant default adds the
-- columns without rewriting the table (PostgreSQL 11 and later).
ALTER TABLE images
    ADD COLUMN blurhash text NOT NULL DEFAULT '',
    ADD COLUMN thumbhash bytea NOT NULL DEFAULT '\x';
