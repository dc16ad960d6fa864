-- The reviewers' history and its CSV export select decided reviews by decision time, newest
-- first; without this index each page or export read the whole table.
create index if not exists hitl_reviews_decided on hitl_reviews (env, decided_at) where state <> 'pending';
