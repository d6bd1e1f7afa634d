-- ListImages with sha256, a lookup by content (e.g. to skip an upload already stored):
-- the caller's images of these bytes, in the keyset order of images_by_owner, so a
-- page costs the same however many images the owner has.
CREATE INDEX images_by_owner_sha256 ON images (owner, sha256, created_ns DESC, id DESC);
