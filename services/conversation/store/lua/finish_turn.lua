-- finish_turn: a reply settles the turn it answers (and its envelope, kept for a resend,
-- can go); pending messages then start the next one.
-- KEYS[1]   the conversation (hash)
-- KEYS[2]   its inbox
-- KEYS[3]   TURNS_DUE
-- KEYS[4]   HANDOFFS_DUE
-- KEYS[5]   the envelope's outbox item
-- ARGV[1]   the reply token answered
-- ARGV[2]   now (ms)
-- ARGV[3]   conversation id
-- Returns   1.
settle(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[3])
return 1
