-- recount: a conversation's count set right by what its hash says (recount_states).
-- KEYS[1]   the conversation (hash)
-- KEYS[2]   BOT_STATES
-- ARGV[1]   conversation id
-- Returns   1.
recount(ARGV[1])
return 1
