package engine

// TagValue is tagValue, for the fuzz test of the tag header's form.
var TagValue = tagValue
