-- wrk script: GET over 100,000 distinct URIs, so a hashing proxy spreads them over its backends.
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/k/" .. ((n * 7919) % 100000))
end
