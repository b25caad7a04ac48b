"""The Lua script of the rate windows in Redis (`gateway.windows.RedisWindows`): the same moving windows as
`gateway.windows.LocalWindows`, for the takes of one call, on Redis's clock."""

# KEYS: the counters of every take, in order. ARGV: the number of takes, then per take: spend (1/0), its number
# of limits n, and per limit (amount, window ms, bucket ms, weight). The reply: the server's time (ms), then per
# take: admitted (1/0, or -1 when the take failed), the retry time (ms; the failure's message when it failed),
# the refusing limit (its place, 1-based; 0 when admitted), and per limit its count and reset time (ms).
# The takes of one call run in order, each as it would alone, at one reading of the server's clock.
# Hash fields: h (the head: the oldest bucket still counted), s (the sum of the buckets), one field per
# bucket id holding its count, and in a window of many buckets t (a marker that keeps the hash a table).
# Whenever s > 0 the head is a bucket that exists, so the time at which the oldest counted hit stops
# counting is (h + 1) * g + window, with no scan. Each counter the call names is read once (one HMGET: h, s
# and the current bucket; an older bucket with one HGET, only as the head moves on or a refusal looks for
# room) and written once, after the last take (one HSET of what changed, one HDEL of the buckets that
# stopped counting): the takes of a call that share counters (a tenant's concurrent requests) share their
# reads and writes. The expiry is set when a bucket is created (the key lives until its newest bucket stops
# counting), with a PTTL.
SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local TABLE = 'a moving window of counters, kept as a hash table so that a field is found directly'

-- each counter named by the call, as the takes so far left it: read on first use, written at the end.
-- A counter is an array (cheaper to make than a table of named fields): [1] its head, [2] its sum, [3] the
-- bucket it was read at, [4] its counts (bucket -> count, false for a bucket that does not exist), [5] it
-- changed, [6] a bucket was created (and [7] when the newest one stops counting), [8] it is kept as a hash
-- table, [9] the buckets other than [3] to write (true) or delete (false), made when first needed
local windows = {}
local order = {}

local function window(key, cur)
  local w = windows[key]
  if w == nil then
    local hs = redis.call('HMGET', key, 'h', 's', tostring(cur))
    local counts = {[cur] = tonumber(hs[3]) or false}
    w = {tonumber(hs[1]) or cur, tonumber(hs[2]) or 0, cur, counts, false, false, 0, false, false}
    windows[key] = w
    order[#order + 1] = key
  end
  return w
end

local function count(key, w, b)
  local v = w[4][b]
  if v == nil then
    v = tonumber(redis.call('HGET', key, tostring(b))) or false
    w[4][b] = v
  end
  return v
end

-- one take: its limits are KEYS[k0 + 1 .. k0 + n], their values from ARGV[a0 + 1]
local function take(k0, a0, n, spend)
  local admitted = 1
  local retry = 0
  local refused = 0
  local st = {}
  for i = 1, n do
    local a = a0 + (i - 1) * 4
    local amount = tonumber(ARGV[a + 1])
    local window_ms = tonumber(ARGV[a + 2])
    local g = tonumber(ARGV[a + 3])
    local weight = tonumber(ARGV[a + 4])
    local key = KEYS[k0 + i]
    local cur = math.floor(now / g)
    local w = window(key, cur)
    local h, s = w[1], w[2]
    if h < cur and (h + 1) * g + window_ms <= now then
      -- the head no longer counts: drop buckets until one counts (or none is left)
      w[5] = true
      repeat
        local x = count(key, w, h)
        if x then
          s = s - x
          w[4][h] = false
          if not w[9] then w[9] = {} end
          w[9][h] = false
        end
        h = h + 1
      until h >= cur or s <= 0 or (h + 1) * g + window_ms > now
      if s > 0 then
        -- keep the head on a bucket that exists
        while h < cur and not count(key, w, h) do
          h = h + 1
        end
      end
    end
    if s < 0 then s = 0 end
    w[1], w[2] = h, s
    if s + weight > amount then
      local wait = window_ms
      if weight <= amount then
        local need = s + weight - amount
        local freed = 0
        local b = h
        while b <= cur do
          local x = count(key, w, b)
          if x then
            freed = freed + x
            if freed >= need then
              wait = (b + 1) * g + window_ms - now
              break
            end
          end
          b = b + 1
        end
      end
      if wait < 1 then wait = 1 end
      if refused == 0 or wait > retry then
        retry = wait
        refused = i
      end
      admitted = 0
    end
    st[i] = {w, window_ms, g, weight, cur}
  end
  local out = {admitted, retry, refused}
  for i = 1, n do
    local w, window_ms, g, weight, cur = unpack(st[i])
    if spend and admitted == 1 and weight > 0 then
      -- nothing counted yet, or a clock that stepped back: the new bucket is the oldest
      if w[2] == 0 or cur < w[1] then w[1] = cur end
      w[2] = w[2] + weight
      w[5] = true
      local counts = w[4]
      local c = counts[cur]
      if c then
        counts[cur] = c + weight
      else
        -- a new bucket; a window of many buckets is kept as a hash table (a value longer than the
        -- default hash-max-listpack-value), whose fields are found directly: as a listpack, each lookup
        -- would scan up to 120 buckets. A window of few buckets stays a (smaller) listpack.
        counts[cur] = weight
        w[6] = true
        if cur - w[1] >= 32 then w[8] = true end
        local expires = (cur + 1) * g + window_ms
        if expires > w[7] then w[7] = expires end
      end
      if cur ~= w[3] then
        -- a bucket other than the one the counter was read at (a limit of another width on the same key)
        if not w[9] then w[9] = {} end
        w[9][cur] = true
      end
    end
    local reset = now
    if w[2] > 0 then reset = (w[1] + 1) * g + window_ms end
    out[#out + 1] = w[2]
    out[#out + 1] = reset
  end
  return out
end

local out = {now}
local k0 = 0
local a = 2
for _ = 1, tonumber(ARGV[1]) do
  local spend = ARGV[a] == '1'
  local n = tonumber(ARGV[a + 1])
  -- a take that fails (a counter of another type) fails alone: the others still answer
  local ok, answer = pcall(take, k0, a + 1, n, spend)
  if not ok then
    local reason = answer
    if type(reason) == 'table' then reason = reason.err end
    answer = {-1, tostring(reason), 0}
    for _ = 1, 2 * n do answer[#answer + 1] = 0 end
  end
  for _, v in ipairs(answer) do out[#out + 1] = v end
  k0 = k0 + n
  a = a + 2 + 4 * n
end

-- every counter written once
for _, key in ipairs(order) do
  local w = windows[key]
  if w[9] then
    local gone = {}
    for b, kept in pairs(w[9]) do
      if not kept then gone[#gone + 1] = tostring(b) end
    end
    if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
  end
  if w[5] then
    local c = w[4][w[3]]
    if c and not w[9] and not w[8] then
      -- the common case: the head, the sum and the bucket of now
      redis.call('HSET', key, 'h', tostring(w[1]), 's', tostring(w[2]), tostring(w[3]), tostring(c))
    else
      local fields = {'h', tostring(w[1]), 's', tostring(w[2])}
      if c then
        fields[5] = tostring(w[3])
        fields[6] = tostring(c)
      end
      if w[9] then
        for b, kept in pairs(w[9]) do
          if kept then
            fields[#fields + 1] = tostring(b)
            fields[#fields + 1] = tostring(w[4][b])
          end
        end
      end
      if w[8] then
        fields[#fields + 1] = 't'
        fields[#fields + 1] = TABLE
      end
      redis.call('HSET', key, unpack(fields))
    end
  end
  if w[6] then
    -- the key lives until its newest bucket stops counting: a clock that stepped back never shortens that
    local left = redis.call('PTTL', key)
    if left < 0 or now + left < w[7] then
      redis.call('PEXPIREAT', key, w[7])
    end
  end
end
return out
"""
