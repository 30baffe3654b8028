-- Where the other replicas reach a replica's portal: portal pages that need
-- a host's connection are forwarded to its owner there, as API requests
-- are to `url`.
ALTER TABLE replicas ADD COLUMN ui_url TEXT;
