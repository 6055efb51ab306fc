-- Keeps a read model of each customer's orders: how many, and their total.
-- Subscribed to order.placed (see config/ecommerce.yaml); query it with
-- GET /tables/customer_totals/<customer>.
return function(event, ctx)
  local order = event.data
  if type(order.customer) ~= "string" or math.type(order.total_cents) ~= "integer" then
    ctx.reject("order.placed needs data.customer (string) and data.total_cents (integer)")
  end
  local totals = ctx.kv("customer_totals")
  local t = totals:get(order.customer) or { orders = 0, total_cents = 0 }
  t.orders = t.orders + 1
  t.total_cents = t.total_cents + order.total_cents
  totals:put(order.customer, t)
end
