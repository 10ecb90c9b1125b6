"""The GraphQL schema: types, inputs, result unions, scalars, root Query/Mutation/Subscription."""
