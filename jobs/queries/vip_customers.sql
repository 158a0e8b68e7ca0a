-- Customers whose lifetime value makes them VIPs.
-- @param min_ltv numeric = 1000   lifetime value threshold, in the shop's currency
select c.id as customer_id,
       c.email,
       c.first_name,
       c.last_name,
       c.lifetime_value,
       c.plan
from customers c
where c.lifetime_value >= {{ min_ltv }}
  and not c.deleted
order by c.id
